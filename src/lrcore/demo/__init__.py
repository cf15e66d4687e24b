"""Demo material for `lrcore train` and the examples, kept apart from the core: the built-in
8x8 digits and small CSV/NPZ table loading (`lrcore.demo.datasets`), and two numpy classifiers
whose parameters live in one flat buffer (`lrcore.demo.models`)."""
