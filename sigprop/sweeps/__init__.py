"""Sweeps: a grid of configs compiled once per shape, run in process or as units of work on an
executor (:mod:`~sigprop.sweeps.executors`, never importing the driver), persisted point by point
(:mod:`~sigprop.sweeps.store`) and resumable (:mod:`~sigprop.sweeps.sweep`)."""
