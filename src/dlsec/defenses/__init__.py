"""Defenses: adversarial training (:mod:`.adversarial`: PGD-AT, FGSM-RS, TRADES) and
training-data sanitization (:mod:`.sanitization`: confident learning, kNN consistency,
spectral signatures, activation clustering)."""
