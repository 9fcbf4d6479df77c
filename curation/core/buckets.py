"""Concept-count buckets: the columns every table of results is grouped by.

Gen4Gen's poster groups prompts by up to 3, 4 and 5 concepts; MSP's Table 1 by 1, 2, 3 and more than 3
subjects. The evaluator, the user study and its report all group by them, so they live below all three.
"""

from __future__ import annotations

BUCKETS = ("<=3", "4", "5")
BUCKET_TITLES = {"<=3": "≤3", "4": "4", "5": "5"}
MSP_BUCKETS = ("1", "2", "3", ">3")
"""The MSP paper's Table 1 columns: n personalized subjects."""
MSP_BUCKET_TITLES = {b: f"n={b}" for b in MSP_BUCKETS}


def bucket(n_concepts: int) -> str:
    """The poster's columns: up to 3 concepts, 4, and 5 (more than 5 counts as 5)."""
    return "<=3" if n_concepts <= 3 else ("4" if n_concepts == 4 else "5")


def msp_bucket(n_concepts: int) -> str:
    """MSP's columns: 1, 2, 3 subjects, and more than 3."""
    return str(n_concepts) if n_concepts <= 3 else ">3"
