"""ddpm-lab's Hydra launcher plugin: Hydra takes launcher classes only from the ``hydra_plugins`` package."""
