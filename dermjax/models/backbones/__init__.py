"""Backbone CNNs with torchvision-mappable parameter names."""
