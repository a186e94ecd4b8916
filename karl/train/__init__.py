from karl.train.phases import (budget_choices, eic_phase, halting_labels, karl_iteration,
                               ltc_phase, sample_budget)

__all__ = ["budget_choices", "eic_phase", "halting_labels", "karl_iteration", "ltc_phase",
           "sample_budget"]
