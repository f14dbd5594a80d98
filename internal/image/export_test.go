package image

// What the external tests (package image_test, which may import vmtest:
// vmtest imports this package) check against the real kernel.
var (
	ModuleDepends  = moduleDepends
	ResolveModules = resolveModules
	RootModules    = rootModules
)
