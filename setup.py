"""cai_jax: Constitutional AI (SL-CAI + RL-CAI) in JAX."""
import setuptools

setuptools.setup(
    name="cai_jax",
    version="0.1.0",
    description="Constitutional AI (Bai et al. 2022) in JAX: critique-revise, "
    "AI-feedback preference labels, Bradley-Terry PM, PPO with KL, DPO.",
    packages=setuptools.find_packages(include=["cai_jax", "cai_jax.*"]),
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "tensorflow-datasets==4.9.10",
        "array-record==0.8.6",
        "grain==0.2.18",
        "gin-config==0.5.0",
        "sentencepiece==0.2.3",
        "tokenizers>=0.23,<0.24",
        "jinja2>=3.1",
        "safetensors>=0.8,<0.9",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "numpy>=2.0,<2.5",
        "matplotlib==3.11.2",
        "tensorboardX==2.6.5",
    ],
    extras_require={
        "test": [
            "pytest>=9,<10",
            "torch==2.13.0",
            "transformers==5.23.0",
            "tensorboard==2.21.0",
        ],
        # Accelerator builds of the same JAX as install_requires (the pins must match).
        "tpu": ["jax[tpu]==0.10.2", "gcsfs==2026.10.1", "google-cloud-storage==3.17.1"],
        "cuda": ["jax[cuda12]==0.10.2"],
        # gs:// workdirs and inputs (etils.epath reads them through gcsfs; Orbax imports
        # google-cloud-storage for gs:// checkpoints); the tpu extra includes them.
        "gcs": ["gcsfs==2026.10.1", "google-cloud-storage==3.17.1"],
    },
)
