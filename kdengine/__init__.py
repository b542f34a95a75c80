"""kdengine: the knowledge-distillation training engine behind KD Playground.

Never imports Streamlit: the same calls serve the web pages, the CLI (``python -m kdengine``) and
the tests.
"""
from .config import DataConfig, MethodConfig, ModelConfig, RunConfig, TeacherConfig, TrainConfig
from .params import ConfigError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataConfig", "MethodConfig", "ModelConfig", "RunConfig", "TeacherConfig",
           "TrainConfig", "__version__"]
