"""The workflow around the models: data stages, training entry points, tracking.

Every DVC stage and every Prefect task calls a function of this package; nothing is
implemented twice. `lightning_modules/` holds the models and imports none of this.
"""
