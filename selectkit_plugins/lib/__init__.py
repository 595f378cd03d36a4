"""Shared maths of the built-in plugins (influence, clustering, whitening): plugins of any kind may
import it; it registers nothing."""
