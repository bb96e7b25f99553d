"""The paper's experiments, each wiring the pipeline steps: boundary (4.1), intervention (4.2)."""
