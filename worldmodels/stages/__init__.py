"""The stages of the pipeline, one module each, each with the function its script calls.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122): collect random rollouts
(:mod:`~worldmodels.stages.collect`), train V (:mod:`~worldmodels.stages.train_vae`), encode
the frames (:mod:`~worldmodels.stages.encode`), train M (:mod:`~worldmodels.stages.train_mdnrnn`),
evolve C (:mod:`~worldmodels.stages.train_controller`), score it
(:mod:`~worldmodels.stages.evaluate`) and watch it (:mod:`~worldmodels.stages.watch`); the
whole chain is :mod:`~worldmodels.stages.pipeline`. Beside them: the DCGAN baseline
(:mod:`~worldmodels.stages.train_gan`), the generative comparison
(:mod:`~worldmodels.stages.compare`) and the export of a run as the shipped agent
(:mod:`~worldmodels.stages.export`). Stages read and write run directories
(:mod:`worldmodels.run`); nothing below them imports a stage.
"""
