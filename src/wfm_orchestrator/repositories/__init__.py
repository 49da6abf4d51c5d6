"""SQL of the use cases: statements for ``Store.write`` and reads through ``Store.query``."""
