from karl.model.karl import KARL, Encoding, epsilon_to_bin, pack_kept

__all__ = ["KARL", "Encoding", "epsilon_to_bin", "pack_kept"]
