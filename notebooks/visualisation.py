# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cnn-exposed/cnn-exposed/blob/main/notebooks/visualisation.ipynb)
#
# # What does a layer respond to? Feature visualisation on a Keras CNN
#
# Attribution says where the evidence is in one image; **feature visualisation** says what a filter, a
# layer or a class responds to in general, by optimising an image to excite it (Olah et al. 2017, Distill
# [*Feature Visualization*](https://distill.pub/2017/feature-visualization/)). Naive gradient ascent on
# pixels gives high-frequency noise; a **Fourier parameterisation with decorrelated colour** and random
# **jitter, scaling and rotation** at every step give the recognisable pictures. cnn-exposed optimises a
# whole batch of filters in one compiled step, on any Keras 3 model, nested ones included.
#
# Change only the **configuration** cell to use your own model.

# %%
# Setup: in Colab, install cnn-exposed from its repository (a normal, non-editable install that changes none of
# Colab's preinstalled packages, so no runtime restart); locally (or in CI) use the installed package.
import importlib.util
import os
import subprocess
import sys

if "google.colab" in sys.modules and importlib.util.find_spec("cnn_exposed") is None:
    package = "cnn-exposed @ git+https://github.com/cnn-exposed/cnn-exposed.git"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import matplotlib.pyplot as plt
import numpy as np

import cnn_exposed as ce

ce.notebook.setup(seed=0)  # the GPU and the versions, light figures, seeded
FAST = os.environ.get("CNN_EXPOSED_FAST") == "1"  # set by the test suite: few steps, small sizes

# %% [markdown]
# ## Configuration

# %%
# ===================== CONFIGURATION: the only cell to change for your own model =====================
MODEL = "demo"  # "demo", a keras.applications name, "model.keras", a SavedModel folder or a keras.Model
# (a keras.Model you built or trained here, mixed precision included: MODEL = model)
LAYERS = None  # None: early, middle and late layers picked for you; or a list of names / "outer/inner" paths
CLASS_NAMES = None  # None (from the model), a list, a text file or the training folder
PREPROCESS = None  # for your own model: "scale_0_1", "scale_-1_1", "none" or a keras.applications name
# ========================================================================================================
STEPS = 24 if FAST else 256  # optimisation steps per image
SIZE = 64 if FAST else None  # image side; None = the model's input size
FILTERS = 4 if FAST else 8  # filters per layer in the grids


# %%
loaded = ce.notebook.load(MODEL, CLASS_NAMES, PREPROCESS)
print(loaded)

# %% [markdown]
# ## Filters from early, middle and late layers
#
# Early filters respond to colours and edges, later ones to textures and object parts: complexity grows
# with depth. Each image maximises the mean activation of one channel (the value under each title).

# %%
model = loaded.model if loaded is not None else ce.load_model("demo").model
prep = loaded.preprocess if loaded is not None else None
layers = LAYERS or ce.visualisation.pick_layers(model)
print("layers:", layers)
fig, walk = ce.network_walk(model, layers, FILTERS, steps=STEPS, size=SIZE, preprocess=prep, progress=False)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
rose = sum(int((v.objective > v.start_objective).sum()) for v in walk.values())
total = sum(len(v) for v in walk.values())
print(f"filters whose activation rose above the random start: {rose} of {total}")
print("(a filter that stays at 0 is dead: its ReLU is off for every image the optimiser could find)")

# %% [markdown]
# ## A filter grid of one layer
#
# `visualise_filters(model, layer, filters)` returns the images (uint8) and each filter's final activation;
# `.save_grid("grid.png")` writes the labelled grid.

# %%
grid = ce.visualise_filters(model, layers[-1], 2 * FILTERS, steps=STEPS, size=SIZE, preprocess=prep, progress=False)
grid.plot()
plt.show()


# %% [markdown]
# ## Why the Fourier parameterisation: pixels vs Fourier, same steps
#
# With plain pixels every pixel is a free parameter and the optimiser fills the image with high
# frequencies the network happens to respond to. The Fourier parameterisation scales each frequency by
# $1/|f|$, so low frequencies are cheap and high ones expensive, and the colours are decorrelated. Below:
# the same filters, the same steps, and the share of image power above 0.25 cycles per pixel.


# %%
def high_frequency_share(imgs, cutoff=0.25):
    gray = imgs.astype(float).mean(-1)
    gray -= gray.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(gray)) ** 2
    f = np.fft.fftfreq(imgs.shape[1])
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return power[:, r > cutoff].sum() / power.sum()


compare = {
    p: ce.visualise_filters(
        model,
        layers[len(layers) // 2],
        FILTERS,
        steps=STEPS,
        size=SIZE,
        preprocess=prep,
        parameterisation=p,
        progress=False,
    )
    for p in ("pixels", "fourier")
}
for p, v in compare.items():
    v.plot(title=f"{p}: high-frequency share {high_frequency_share(v.images):.2f}")
    plt.show()

# %% [markdown]
# ## Classes
#
# Maximising a class's logit (before softmax) shows what the model thinks the class looks like. For the
# demo model, look for rails in the *bathroom* image: the shortcut is visible here too.

# %%
names = loaded.class_names if loaded is not None else list(ce.demo.CLASS_NAMES)
n_classes = min(len(names), 6)
classes = ce.visualise_classes(
    model, list(range(n_classes)), names, steps=STEPS, size=SIZE, preprocess=prep, progress=False
)
classes.plot()
plt.show()

# %% [markdown]
# ## What the filters see in one image
#
# The activation maps of a layer for one picture: which filters fire, and where.

# %%
if MODEL == "demo":
    picture = ce.demo.load_images("trap")[0][0]
else:
    picture = np.random.default_rng(0).integers(0, 255, (*loaded.input_size, 3), dtype=np.uint8)
fig, acts = ce.plot_activation_maps(model, picture, layers[-1], preprocess=prep, channels=15)
plt.show()

# %% [markdown]
# ## An ImageNet model
#
# With a network, a `keras.applications` model shows the classic pictures (textures early, parts late).
# Without one (as in this project's CI) the section says so and the notebook goes on.

# %%
try:
    net = ce.load_model("mobilenet_v2")
except ce.CnnExposedError as err:
    net = None
    print("Skipping the ImageNet section:", err)
if net is not None:
    fig, _ = ce.network_walk(
        net.model, None, FILTERS, steps=STEPS, size=SIZE or 128, preprocess=net.preprocess, progress=False
    )
    plt.show()

# %% [markdown]
# ## Your own model
#
# Set `MODEL = "path/to/model.keras"` (and `PREPROCESS`, `CLASS_NAMES`, `LAYERS`) in the configuration cell
# and run all cells. Layers are named by name or by path through nested models
# (`ce.list_layers(model)` lists them). For Lucid-quality pictures keep the defaults (Fourier
# parameterisation, standard transforms) and use 256–512 steps.
