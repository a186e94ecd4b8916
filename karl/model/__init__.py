from karl.model.encoding import (RequestError, Sweep, check_budget, check_count, check_epsilon,
                                 epsilon_to_bin, halting_decision, parse_epsilons)
from karl.model.karl import KARL, Encoding, pack_kept

__all__ = ["KARL", "Encoding", "Sweep", "epsilon_to_bin", "halting_decision", "check_epsilon",
           "check_count", "check_budget", "parse_epsilons", "RequestError", "pack_kept"]
