"""Attacks: evasion (white- and black-box), poisoning, and privacy."""
