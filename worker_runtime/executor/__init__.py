"""`worker-runtime executor`: a bot for BuildGrid (Remote Workers API) that runs actions
one-shot, or on persistent workers when they carry the persistent worker convention."""
