"""The values a user chooses among, by name: the engines and the stream's read orders.

Plain constants with no imports, so the command line lists them in its flags
before JAX loads; the modules that act on them import them from here.
"""

ENGINES = ("scan", "affine", "step", "eager")  # how fit runs (jaxlin.config.TrainConfig.engine)
COMPILED_ENGINES = ENGINES[:2]  # those that run every epoch in one compiled program
ORDERS = ("exact", "runs")  # how fit_stream reads: fit's permutation, or runs of rows
