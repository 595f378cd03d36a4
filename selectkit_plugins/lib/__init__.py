"""Shared maths of the built-in plugins (influence, whitening, columns): plugins of any kind may
import it; it registers nothing."""
