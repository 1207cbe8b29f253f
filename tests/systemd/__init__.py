"""systemd units: `systemd-analyze verify`/`security` on the unit files, and a real boot test in nspawn."""
