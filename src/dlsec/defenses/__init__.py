"""Defenses: adversarial training, data sanitization, differential privacy, serving policies."""
