"""Recipes: how a model family turns a request's inputs into token sequences and a pool span.

One module per family (sbert, llm2vec, e5). ``build_recipe`` picks one by name.
"""

from gigarouter.recipes.base import PreparedInput, Recipe, build_recipe

__all__ = ["PreparedInput", "Recipe", "build_recipe"]
