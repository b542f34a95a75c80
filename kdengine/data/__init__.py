"""Data sets (2-D toys, digits, torchvision images, the generated text task) and transfer sets."""
from kdengine.data.datasets import (DataBundle, DataUnavailable, Split, data_key, fallback_config,
                                    load_data, teacher_data_key)

__all__ = ["DataBundle", "DataUnavailable", "Split", "data_key", "fallback_config", "load_data",
           "teacher_data_key"]
