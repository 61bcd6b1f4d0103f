"""The SemAIM model, in the paper's order: orders (Eq. 2-6, ``orders``), the two attention streams
(Eq. 7-11, ``streams``), targets and loss (Eq. 12, ``targets``), and the module that puts them together
(``semaim.SemAIM``). ``attention``, ``mlp``, ``pos_embed`` and ``teacher`` are its building blocks."""
