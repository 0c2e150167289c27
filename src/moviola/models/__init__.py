"""Moviola's networks. The video autoencoder lives in `moviola.models.vae`."""
