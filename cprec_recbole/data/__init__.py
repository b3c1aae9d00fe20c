"""Domains, protocol transforms, candidate sets and CPT corpora."""
