// Builds GraphiQL into dist/, which the Go package embeds. Paths are
// relative (base './') so the page works under any prefix the gateway is
// served at; everything lands in dist/playground/ (served as GET /playground/…).
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  logLevel: 'warn',
  build: {
    outDir: 'dist',
    assetsDir: 'playground',
    emptyOutDir: true,
    sourcemap: false,
    reportCompressedSize: false,
    chunkSizeWarningLimit: 8000,
    modulePreload: { polyfill: false },
    rollupOptions: {
      // framer-motion's "use client" lines mean nothing outside React
      // Server Components; bundling drops them on purpose.
      onwarn(warning, warn) {
        if (warning.code !== 'MODULE_LEVEL_DIRECTIVE') warn(warning);
      },
    },
  },
  worker: { format: 'es' },
});
