"""neurotwin: predictive models ("digital twins") of mouse visual cortex."""

__version__ = "0.1.0"
