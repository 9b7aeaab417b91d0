"""The pipeline's flow: fetch, batch, embed, score in order, deliver, commit."""
