"""taskpack's pipeline: recipes, data streams, models, CL methods, evaluation, tracking, CLI.

Kept light on import: heavy optional dependencies (mlflow, optuna, tvm) load lazily where used.
"""

__version__ = "0.1.0"
