"""Distillation methods, one module each, found by the registry (:mod:`kdengine.core.registry`).

Every module in this package that defines a class decorated with ``@register`` becomes selectable by
name; adding a method is adding a file.
"""
from kdengine.core.registry import get_method_class, method_names, register
from kdengine.methods.base import Batch, Method, NoParams, TrainContext, temperature_of

__all__ = ["Batch", "Method", "NoParams", "TrainContext", "get_method_class", "method_names",
           "register", "temperature_of"]
