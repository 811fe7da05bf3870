"""How many generated graphs each fuzzing test ran, for the summary line at the end of a pytest run."""

from collections import Counter

COUNTS: Counter = Counter()
