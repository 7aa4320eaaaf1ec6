"""The per-user, per-project daemon that owns backends across Buck2 commands, and the thin
front that Buck2 launches and that hands its socket to the daemon."""
