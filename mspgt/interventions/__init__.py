"""Scale interventions (paper 4.2): noise in the blocks of one scale, sampling, text metrics, paired tests."""
