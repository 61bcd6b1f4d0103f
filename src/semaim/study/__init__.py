"""Studies that answer a question about your data with many runs and write a report: ``payoff`` (does
pretraining pay off, against labels?) and ``orders`` (which autoregression order is best?). Both share a
resumable runner that several processes can drive (``runner``) and paired statistics over seeds
(``stats``). This project's own studies of the paper, with their plans, rows and reports, live in the
repository's ``experiments/`` folder."""
