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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cnn-exposed/cnn-exposed/blob/main/notebooks/attribution.ipynb)
#
# # Where is the evidence? Attribution on a Keras CNN
#
# A hotel-image classifier called *pool* photos **bathroom**. This notebook shows how to find out why, with
# every attribution method of **cnn-exposed**, first on an offline replica of that story whose ground truth we
# know, then on an ImageNet model, then on your own model.
#
# *Run all cells* works as is (Colab: *Runtime → Change runtime type → GPU* makes it faster). To use your own
# model and images, change only the **configuration** cell.

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
IMAGES = "bundled"  # "bundled" (the demo's images), a folder (of class sub-folders) or a tf.data.Dataset
CLASS_NAMES = None  # None (from the model), a list, a text file (one name per line) or the training folder
PREPROCESS = None  # for your own model: "scale_0_1", "scale_-1_1", "none" or a keras.applications name
LAYER = None  # CAM layer: None = the last spatial layer (found inside nested models), or "outer/inner"
# ========================================================================================================
SAMPLES = 8 if FAST else 50  # SmoothGrad noise samples
STEPS = 16 if FAST else 64  # integrated-gradients steps


# %%
loaded = ce.notebook.load(MODEL, CLASS_NAMES, PREPROCESS)
print(loaded)

# %% [markdown]
# ## The demo story
#
# The demo model is a small CNN (a convolutional base model nested in a `GlobalAveragePooling` + `Dense`
# head, the way transfer-learned models are built) trained on generated hotel scenes. In its training
# photos **metal rails** (grab bars, towel rails, ladders) appeared only in bathrooms. The *trap* images are
# pools that have a ladder or a hand rail. Every image comes with pixel masks of its objects.

# %%
images, labels, masks = {}, {}, {}
for split in ("clean", "trap"):
    images[split], labels[split], masks[split] = ce.demo.load_images(split)
names = list(ce.demo.CLASS_NAMES)
demo_model = ce.load_model("demo")
for split in ("clean", "trap"):
    probs = demo_model.model.predict(demo_model.preprocess(images[split]), verbose=0)
    print(split, "predicted:", [names[i] for i in probs.argmax(1)])

# %%
# NBVAL_CHECK_OUTPUT
probs = demo_model.model.predict(demo_model.preprocess(images["trap"]), verbose=0)
called_bathroom = probs.argmax(1) == names.index("bathroom")
clean_pred = demo_model.model.predict(demo_model.preprocess(images["clean"]), verbose=0).argmax(1)
print(f"clean images correct: {(clean_pred == labels['clean']).sum()} of {len(clean_pred)}")
print(f"trap pools called bathroom: {called_bathroom.sum()} of {len(called_bathroom)}")

# %%
fig, axes = plt.subplots(1, len(images["trap"]), figsize=(2 * len(images["trap"]), 2.4))
for ax, img, p in zip(axes, images["trap"], probs):
    ax.imshow(img)
    ax.axis("off")
    ax.set_title(f"{names[p.argmax()]} {p.max():.2f}", fontsize=9)
fig.suptitle("trap images: pools with metal rails, and what the model says")
plt.show()

# %% [markdown]
# ## Gradient saliency and SmoothGrad
#
# **Saliency** (Simonyan et al. 2013, [arXiv:1312.6034](https://arxiv.org/abs/1312.6034)) is the gradient
# of the class score (the logit, before softmax) with respect to the input pixels, $\partial y_c/\partial x$,
# drawn as its absolute value's maximum over the colour channels. It answers "which pixels, changed a
# little, change the score most" and is usually noisy.
#
# **SmoothGrad** (Smilkov et al. 2017, [arXiv:1706.03825](https://arxiv.org/abs/1706.03825)) averages the
# gradients of `samples` noisy copies $x + \mathcal N(0, \sigma^2)$ with $\sigma$ = 10–20 % of the input
# range; the noise cancels, the structure stays. VarGrad and SquareGrad are its variance and mean-square
# variants (`reduction=`). What to look for: do the bright pixels sit on the object or on the context?

# %%
trap = images["trap"]
sal = ce.explain(demo_model.model, trap, "saliency", preprocess=demo_model.preprocess)
smooth = ce.explain(demo_model.model, trap, "smoothgrad", preprocess=demo_model.preprocess, samples=SAMPLES, noise=0.15)
ce.plot_explanations({"saliency": sal, "SmoothGrad": smooth}, names, max_images=4)
plt.show()

# %% [markdown]
# ## Integrated gradients
#
# Integrated gradients (Sundararajan et al. 2017, [arXiv:1703.01365](https://arxiv.org/abs/1703.01365))
# sum the gradients along the straight path from a baseline $x'$ to the image:
# $\mathrm{IG}_i = (x_i - x'_i)\int_0^1 \partial_i f(x' + \alpha(x - x'))\,d\alpha$. They satisfy
# *completeness*: $\sum_i \mathrm{IG}_i = f(x) - f(x')$. The **completeness error** printed below tells
# whether `steps` was enough (the paper suggests staying within 5 %). Failure mode: the result depends on
# the baseline (black is not "absence" for a black object); try `baseline="blur"`.

# %%
ig = ce.explain(
    demo_model.model, trap, "integrated_gradients", preprocess=demo_model.preprocess, steps=STEPS, baseline="black"
)
print("completeness error per image:", np.round(ig.completeness_error, 4))
ig_blur = ce.explain(
    demo_model.model, trap, "integrated_gradients", preprocess=demo_model.preprocess, steps=STEPS, baseline="blur"
)
ce.plot_explanations({"IG black": ig, "IG blur": ig_blur}, names, max_images=4)
plt.show()

# %% [markdown]
# ## The CAM family: Grad-CAM, Grad-CAM++, Layer-CAM, Score-CAM
#
# A class activation map weights the feature maps $A^k$ of a convolutional layer (by default the last
# spatial one, found inside the nested base model) and upsamples the result to the image:
#
# - **Grad-CAM** (Selvaraju et al. 2017, [arXiv:1610.02391](https://arxiv.org/abs/1610.02391)):
#   $\mathrm{ReLU}(\sum_k \alpha_k A^k)$ with $\alpha_k$ the spatial mean of $\partial y_c/\partial A^k$.
# - **Grad-CAM++** (Chattopadhay et al. 2018, [arXiv:1710.11063](https://arxiv.org/abs/1710.11063)):
#   second-order weights that handle several instances of a class better.
# - **Layer-CAM** (Jiang et al. 2021): $\mathrm{ReLU}(\sum_k \mathrm{ReLU}(\partial y_c/\partial A^k) \odot A^k)$
#   position by position; sharper on earlier layers.
# - **Score-CAM** (Wang et al. 2020, [arXiv:1910.01279](https://arxiv.org/abs/1910.01279)): no gradients;
#   each channel masks the input and is weighted by the class probability it keeps.
#
# Failure modes: the map is as coarse as the layer; a CAM says *where*, not *what feature*.

# %%
cams = {
    m: ce.explain(demo_model.model, trap, m, preprocess=demo_model.preprocess, layer=LAYER if MODEL == "demo" else None)
    for m in ("gradcam", "gradcam++", "layercam", "scorecam")
}
print("layer used:", cams["gradcam"].layer)
ce.plot_explanations(cams, names, max_images=4)
plt.show()

# %% [markdown]
# ## Occlusion
#
# Occlusion (Zeiler & Fergus 2014, [arXiv:1311.2901](https://arxiv.org/abs/1311.2901)) hides one patch at a
# time and records how much the score drops: slow, model-agnostic and easy to trust. All occluded copies
# are evaluated in batches. Failure mode: the patch size sets the resolution, and the fill value is itself
# an input the model may react to.

# %%
occ = ce.explain(demo_model.model, trap, "occlusion", preprocess=demo_model.preprocess, patch=12, stride=6)
ce.plot_explanations({"occlusion": occ}, names, max_images=4)
plt.show()

# %% [markdown]
# ## Rule-based: LRP, guided backprop, guided Grad-CAM
#
# **LRP** (Bach et al. 2015; Montavon et al. 2019) redistributes the logit backwards layer by layer so that
# relevance is conserved; the default composite uses the $z^B$ rule on the first convolution, $z^+$ on the
# others and $\varepsilon$ on dense layers, with batch normalisation folded in. **Guided backprop**
# (Springenberg et al. 2014) only lets positive gradients through ReLUs; it gives crisp pictures that depend
# little on the model (Adebayo et al. 2018), so treat it with care. **Guided Grad-CAM** multiplies it with
# Grad-CAM.

# %%
rules = {
    m: ce.explain(demo_model.model, trap, m, preprocess=demo_model.preprocess)
    for m in ("lrp", "guided_backprop", "guided_gradcam")
}
ce.plot_explanations(rules, names, max_images=4)
plt.show()

# %% [markdown]
# ## Every other method by name
#
# The methods users know from pytorch-grad-cam, PAIR's `saliency`, captum, shap and xplique, each one call
# (the README's method table gives their formulas, papers and options):
# - the rest of the **CAM family**: Eigen-CAM and FEM (gradient-free, class-agnostic), HiResCAM and XGrad-CAM
#   (gradient-weighted), Ablation-CAM (each channel's score drop when it is zeroed);
# - the **path methods**: Blur IG (a blur path instead of a baseline), Guided IG (an adaptive path),
#   GradientSHAP (expected gradients over a background), and XRAI (integrated gradients summed over regions);
# - the **mask samplers**: RISE (random masks), Sobol (total Sobol indices of grid cells), KernelSHAP and LIME
#   (superpixels switched on and off, a weighted linear fit);
# - **DeepLIFT** (Rescale rule: attributions that sum exactly to f(x) − f(x′)) and **DeepSHAP** (DeepLIFT averaged
#   over a background set, here the clean demo images).
#
# With `CNN_EXPOSED_FAST` set (the test suite) they run with few samples; drop the options for the papers'
# settings.

# %%
OTHER = {
    "eigencam": {},
    "hirescam": {},
    "ablationcam": {"channels": 32 if FAST else None},
    "fem": {},
    "blur_ig": {"steps": STEPS},
    "guided_ig": {"steps": STEPS},
    "gradient_shap": {"samples": SAMPLES},
    "xrai": {"steps": STEPS},
    "rise": {"samples": 256 if FAST else 4000},
    "sobol": {"grid": 4 if FAST else 8, "designs": 8 if FAST else 32},
    "kernel_shap": {"samples": 512 if FAST else "auto", "segmentation": "slic"},
    # LIME explains the probability by default, as the lime package does: on a model this sure of itself (1.00)
    # hiding a superpixel barely moves it, and the fit is noise. The logit moves.
    "lime": {"samples": 512 if FAST else 1000, "segmentation": "slic", "score": "logit"},
    "deeplift": {"baseline": "blur"},
    "deepshap": {"background": images["clean"][:4] if FAST else images["clean"]},
}
others = {m: ce.explain(demo_model.model, trap[:2], m, preprocess=demo_model.preprocess, **o) for m, o in OTHER.items()}
ce.plot_explanations(others, names, max_images=2)
plt.show()

# %% [markdown]
# ## Side by side, and the view that finds the shortcut
#
# Group the mistakes by confusion pair (true → predicted) and average each method's heatmap over the pair:
# if the mean map of *pool → bathroom* lights up where the rails are, the model has learned the shortcut.
# The demo ships rail masks, so we can also count how often each map's peak falls on a rail (the pointing
# game, Zhang et al. 2016).

# %%
side = {
    "saliency": sal,
    "SmoothGrad": smooth,
    "IG": ig,
    "Grad-CAM": cams["gradcam"],
    "Score-CAM": cams["scorecam"],
    "occlusion": occ,
    "LRP": rules["lrp"],
}
ce.plot_explanations(side, names, max_images=3, cell_size=1.9)
plt.show()

# %%
wrong = called_bathroom
fig, axes = plt.subplots(1, len(side) + 1, figsize=(2.1 * (len(side) + 1), 2.6))
axes[0].imshow(trap[wrong].mean(0).astype("uint8"))
axes[0].set_title("mean image", fontsize=8)
axes[0].contour(masks["trap"]["rail"][wrong].mean(0), levels=[0.2], colors="white", linewidths=0.8)
for ax, (name, exp) in zip(axes[1:], side.items()):
    ax.imshow(exp.maps[wrong].mean(0), cmap="jet")
    ax.set_title(f"mean {name}", fontsize=8)
    ax.contour(masks["trap"]["rail"][wrong].mean(0), levels=[0.2], colors="white", linewidths=0.8)
for ax in axes:
    ax.axis("off")
fig.suptitle("pool → bathroom: mean heatmaps (white: where the rails are)")
plt.show()
for name, exp in side.items():
    hits = ce.pointing_game(exp.maps[wrong], masks["trap"]["rail"][wrong])
    print(f"{name:10s} peak on a rail in {hits.sum()} of {wrong.sum()} trap pools called bathroom")

# %% [markdown]
# ## The same on an ImageNet model
#
# `keras.applications` models load by name with their own preprocessing; the ImageNet weights are
# downloaded as Keras normally does. Without a network (as in this project's CI) the section says so and
# the notebook goes on.

# %%
imagenet = ce.notebook.load("mobilenet_v2")
if imagenet is None:
    print("Skipping the ImageNet section: its weights cannot be downloaded here.")
else:
    photos, _ = ce.images.collect_images([ce.bundled.data_dir() / "images"])
    batch = np.stack([ce.images.resize_image(ce.images.read_image(f.path), imagenet.input_size) for f in photos])
    exps = {
        m: ce.explain(imagenet.model, batch, m, preprocess=imagenet.preprocess)
        for m in ("gradcam", "integrated_gradients")
    }
    ce.plot_explanations(exps, imagenet.class_names)
    plt.show()

# %% [markdown]
# ## Your own model
#
# Change the configuration cell: `MODEL = "path/to/model.keras"`, `IMAGES = "path/to/folder"` (a folder of
# class sub-folders gives true labels) or a `tf.data.Dataset` such as `keras.utils.image_dataset_from_directory`
# returns, `CLASS_NAMES`, `PREPROCESS` and, if you like, `LAYER` (see
# `ce.list_layers(model, spatial_only=True)`). The cell below then runs the comparison on your images. For
# folders of thousands of images, the command line writes a browsable report:
# `cnn-exposed explain model.keras data/val --class-names classes.txt`.

# %%
if loaded is not None:
    if IMAGES == "bundled":
        mine, true = images["trap"], labels["trap"]
        mine = np.stack([ce.images.resize_image(i, loaded.input_size) for i in mine])
    else:
        # a folder, files, a tf.data.Dataset or PyDataset (see cnn_exposed.sources): its first 8 images
        mine = next(ce.sources.iter_batches(IMAGES, batch_size=8, size=loaded.input_size)).images[:8]
    mine_exps = {
        m: ce.explain(
            loaded.model, mine, m, preprocess=loaded.preprocess, **({"layer": LAYER} if m == "gradcam" else {})
        )
        for m in ("gradcam", "integrated_gradients", "occlusion")
    }
    ce.plot_explanations(mine_exps, loaded.class_names, max_images=4)
    plt.show()
