"""The documentation: Sphinx sources and the results-page generator."""
