import { defineConfig } from 'vite';

// `npm run build` writes dist/ (index.html + hashed files under dist/assets/), which the API serves
// at / and /assets/. `npm run dev` serves the sources and passes API calls to CIMTWIN_API (default :8000).
const api = process.env.CIMTWIN_API || 'http://127.0.0.1:8000';
const proxied = ['/tiles', '/alerts', '/twin', '/buildings', '/parties', '/health'];

export default defineConfig({
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // MapLibre GL JS is one ~1 MB module; the console has nothing else of size.
    chunkSizeWarningLimit: 1500,
    sourcemap: false,
  },
  server: {
    proxy: Object.fromEntries(proxied.map((p) => [p, { target: api, changeOrigin: false }])),
  },
});
