"""modelvc: the git-like CLI, the HTTP client and the embedded stack."""
