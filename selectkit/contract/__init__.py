"""The plugin contract: what a component or pass provider declares, what it is handed, and the
shapes that pass between stages. It imports nothing of selectkit above itself (bar `errors`);
`selectkit.plugin` is the door plugins import it through."""
