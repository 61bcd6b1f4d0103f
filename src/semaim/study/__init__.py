"""Studies that run many pretrainings and evaluations and write a report: ``reproduce`` (the order
study, Tables 1 and 3 at small scale)."""
