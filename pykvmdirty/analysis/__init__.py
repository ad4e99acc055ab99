"""Analysis on top of the emulator: compare dirty-log interfaces (compare,
sweep), price counted events (costmodel) and measure the prices on this
machine (calibrate)."""
