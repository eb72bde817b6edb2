"""The built-in stages, one module (or one package, with its helpers) each.

Importing this package imports no stage: `pipeline.registry` names them and loads the ones a
graph uses.
"""
