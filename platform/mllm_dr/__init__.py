"""MLlm-DR: explainable depression assessment from clinical interviews, as a distributed platform on Ray."""

__version__ = "0.1.0"
