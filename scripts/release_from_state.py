"""Write the EMA weights of a training ``state.pt`` as a release dir (for mid-run snapshots).

    python scripts/release_from_state.py runs/cpu/stage1m/state.pt runs/cpu/stage1m_snapshot
"""

from __future__ import annotations

import argparse

from karl.api import save_pretrained
from karl.checkpoint import load_state
from karl.config import experiment_from_dict, to_dict
from karl.model import KARL


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("state")
    p.add_argument("out")
    args = p.parse_args()
    state = load_state(args.state, "cpu")
    cfg = experiment_from_dict(state["config"])
    model = KARL(cfg.model)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state["ema"].items()})
    extra = {"training": {"stage": state["stage"], "step": int(state["step"]), "preset": cfg.preset,
                          "experiment": to_dict(cfg), "from_state": args.state}}
    print(save_pretrained(model, args.out, extra), "step", int(state["step"]))


if __name__ == "__main__":
    main()
