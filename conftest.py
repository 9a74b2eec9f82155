"""Settings for the whole test run (tests/ and the notebooks that nbval executes).

The notebooks read these from the environment, which their kernels inherit: few optimisation steps and
small images, so that both run in a few minutes on two CPU cores. Colab users get the full settings.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CNN_EXPOSED_FAST"] = "1"
