"""What ``purify`` does with a column it cannot certify (``on_uncertified``), in one place for the
library and the command line (which must not import JAX to answer ``--help``):

* ``"input"``: the column keeps the values that came in;
* ``"estimate"``: it gets the l1 estimate A x̂ (with a warning);
* ``"raise"``: nothing is returned; an error carries the report.
"""

ON_UNCERTIFIED = ("input", "estimate", "raise")
"""The values of ``purify``'s ``on_uncertified`` (and ``jaxpurify purify --on-uncertified``), the
default first: ``"input"`` keeps a column that is not certified as it came in, ``"estimate"``
writes its l1 estimate A x̂ (with a warning), ``"raise"`` returns nothing (``UncertifiedError``
carries the report)."""
