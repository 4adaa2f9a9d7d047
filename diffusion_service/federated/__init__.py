"""Federated training of the class-conditional latent diffusion model (FedDDPM).

Pure pieces, no Flower (the apps wire them into Messages and strategies):

- :mod:`.ldm`: the frozen parts (VAE, scheduler, prompt states), the federated
  U-Net, the epsilon-prediction loss, a plain training loop, DDIM sampling and
  saving a result in the diffusers layout;
- :mod:`.auxiliary`: the auxiliary dataset the server samples from the
  uploaded local models (FedDDPM phase b);
- :mod:`.trigger`: FedDDPM+'s slow-learning check (our design);
- :mod:`.measures`: per-round quality measures (held-out denoising loss,
  Frechet distance and accuracy of a fixed classifier on samples).

Method and design choices: ``docs/fedddpm.md``.
"""
