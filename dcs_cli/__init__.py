"""dcs: training classifiers over millions of classes with dynamic class selection (HF-Softmax)."""

__version__ = "0.1.0"
