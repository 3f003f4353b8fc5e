/* Pixel counts of the (gt id, pred id) pairs of two COCO panoptic PNGs, straight from their inflated
 * scanlines.
 *
 * The Python side (__init__.py) checks the PNGs and inflates their IDAT streams with libdeflate.
 * This file undoes the PNG row filters (PNG spec, section 9) one row at a time into two small row
 * buffers per image, turns each pixel into its segment id (R + 256 G + 256^2 B, or a palette
 * entry's id) and counts the pixels of each distinct (gt id, pred id) pair, run by run, in a small
 * hash table: the intersection counts that panoptix.evaluation.pq_core builds from pair_runs, in
 * order of first appearance in raster order. No full-size image is ever written.
 *
 * Speed comes from piecewise-constant images: flat stretches are skipped 8 pixels at a time, and
 * Paeth picks the left pixel without the full predictor wherever the row above is flat.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE int paeth(int a, int b, int c) {
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    if (pa <= pb && pa <= pc) return a;
    return pb <= pc ? b : c;
}

static const uint8_t ZEROS[32];

/* Eight copies of the pixel a (bpp channels): independent stores, not a byte-by-byte chain. */
ALWAYS_INLINE void fill(uint8_t *out, const int *a, int bpp) {
    for (int j = 0; j < 8; j++)
        for (int k = 0; k < bpp; k++) out[j * bpp + k] = (uint8_t)a[k];
}

/* Sub row, the left neighbour in registers, and runs of zero residuals filled 8 pixels at a time. */
ALWAYS_INLINE void sub_row(const uint8_t *f, uint8_t *cur, Py_ssize_t stride, int bpp) {
    int a[4] = {0, 0, 0, 0};
    for (Py_ssize_t i = 0; i < stride; i += bpp) {
        while (i + 8 * bpp <= stride && !memcmp(f + i, ZEROS, 8 * bpp)) {
            fill(cur + i, a, bpp);
            i += 8 * bpp;
        }
        if (i >= stride) break;
        for (int k = 0; k < bpp; k++) {
            a[k] = (uint8_t)(f[i + k] + a[k]);
            cur[i + k] = (uint8_t)a[k];
        }
    }
}

static void sub_row1(const uint8_t *f, uint8_t *c, Py_ssize_t s) { sub_row(f, c, s, 1); }
static void sub_row3(const uint8_t *f, uint8_t *c, Py_ssize_t s) { sub_row(f, c, s, 3); }
static void sub_row4(const uint8_t *f, uint8_t *c, Py_ssize_t s) { sub_row(f, c, s, 4); }

/* Paeth row with each channel's left neighbour in a register: no store-to-load chain per byte. */
ALWAYS_INLINE void paeth_row(const uint8_t *f, const uint8_t *prev, uint8_t *cur, Py_ssize_t stride, int bpp) {
    int a[4] = {0, 0, 0, 0}, c[4] = {0, 0, 0, 0};
    for (Py_ssize_t i = 0; i < stride; i += bpp) {
        /* No residual and the row above repeats its left pixel (b == c): Paeth picks a, 8 pixels. */
        while (i >= bpp && i + 8 * bpp <= stride && !memcmp(f + i, ZEROS, 8 * bpp)
               && !memcmp(prev + i, prev + i - bpp, 8 * bpp)) {
            fill(cur + i, a, bpp);
            for (int k = 0; k < bpp; k++) c[k] = prev[i + 7 * bpp + k];
            i += 8 * bpp;
        }
        if (i >= stride) break;
        for (int k = 0; k < bpp; k++) {
            int b = prev[i + k];
            a[k] = (uint8_t)(f[i + k] + (b == c[k] ? a[k] : paeth(a[k], b, c[k])));
            cur[i + k] = (uint8_t)a[k];
            c[k] = b;
        }
    }
}

static void paeth_row1(const uint8_t *f, const uint8_t *p, uint8_t *c, Py_ssize_t s) { paeth_row(f, p, c, s, 1); }
static void paeth_row3(const uint8_t *f, const uint8_t *p, uint8_t *c, Py_ssize_t s) { paeth_row(f, p, c, s, 3); }
static void paeth_row4(const uint8_t *f, const uint8_t *p, uint8_t *c, Py_ssize_t s) { paeth_row(f, p, c, s, 4); }

/* One row: in = filter type byte + stride filtered bytes; prev = the unfiltered row above (a row of
 * zeros for the first row, as the spec reads it). Returns -1 for an unknown filter type. */
static int unfilter_row(const uint8_t *in, const uint8_t *prev, uint8_t *cur, Py_ssize_t stride, int bpp) {
    const uint8_t *f = in + 1;
    Py_ssize_t i;
    switch (in[0]) {
    case 0:
        memcpy(cur, f, stride);
        return 0;
    case 1:
        if (bpp == 3) sub_row3(f, cur, stride);
        else if (bpp == 4) sub_row4(f, cur, stride);
        else sub_row1(f, cur, stride);
        return 0;
    case 2:
        for (i = 0; i < stride; i++) cur[i] = (uint8_t)(f[i] + prev[i]);
        return 0;
    case 3:
        for (i = 0; i < bpp; i++) cur[i] = (uint8_t)(f[i] + (prev[i] >> 1));
        for (; i < stride; i++) cur[i] = (uint8_t)(f[i] + ((cur[i - bpp] + prev[i]) >> 1));
        return 0;
    case 4:
        if (bpp == 3) paeth_row3(f, prev, cur, stride);
        else if (bpp == 4) paeth_row4(f, prev, cur, stride);
        else paeth_row1(f, prev, cur, stride);
        return 0;
    }
    return -1;
}

/* The distinct (gt id, pred id) pairs seen so far, in order of first appearance, with their pixel
 * counts; `slots` is an open-addressing hash table of indices into them (-1 empty). The pair being
 * extended (last_g, last_p, run) is added when its run ends. */
typedef struct {
    uint32_t *g, *p;
    int64_t *n;
    int32_t *slots;
    Py_ssize_t len, cap, mask;
    uint32_t last_g, last_p;
    int64_t run;
} Pairs;

ALWAYS_INLINE Py_ssize_t slot_of(uint32_t g, uint32_t p, Py_ssize_t mask) {
    uint64_t k = ((uint64_t)g << 32 | p) * 0x9E3779B97F4A7C15ull;
    return (Py_ssize_t)(k >> 32) & mask;
}

static int rehash(Pairs *r, Py_ssize_t size) {
    int32_t *slots = malloc(size * sizeof *slots);
    if (!slots) return -1;
    memset(slots, 0xFF, size * sizeof *slots);
    for (Py_ssize_t i = 0; i < r->len; i++) {
        Py_ssize_t s = slot_of(r->g[i], r->p[i], size - 1);
        while (slots[s] >= 0) s = (s + 1) & (size - 1);
        slots[s] = (int32_t)i;
    }
    free(r->slots);
    r->slots = slots;
    r->mask = size - 1;
    return 0;
}

static int grow(Pairs *r) {
    Py_ssize_t cap = r->cap ? 2 * r->cap : 256;
    uint32_t *g = realloc(r->g, cap * sizeof *g);
    if (!g) return -1;
    r->g = g;
    uint32_t *p = realloc(r->p, cap * sizeof *p);
    if (!p) return -1;
    r->p = p;
    int64_t *n = realloc(r->n, cap * sizeof *n);
    if (!n) return -1;
    r->n = n;
    r->cap = cap;
    return rehash(r, 2 * cap);
}

/* Add the finished run to its pair's count. */
static int push(Pairs *r) {
    if (r->len == r->cap && grow(r)) return -1;
    Py_ssize_t s = slot_of(r->last_g, r->last_p, r->mask);
    for (; r->slots[s] >= 0; s = (s + 1) & r->mask) {
        Py_ssize_t i = r->slots[s];
        if (r->g[i] == r->last_g && r->p[i] == r->last_p) {
            r->n[i] += r->run;
            return 0;
        }
    }
    r->slots[s] = (int32_t)r->len;
    r->g[r->len] = r->last_g;
    r->p[r->len] = r->last_p;
    r->n[r->len++] = r->run;
    return 0;
}

/* The id of pixel x: a palette entry (ch 1) or the low 3 bytes. Rows have 4 readable bytes past
 * their end, so the 4-byte load is safe for the last pixel too. */
ALWAYS_INLINE uint32_t pixel_id(const uint8_t *row, Py_ssize_t x, int ch, const uint32_t *pal) {
    if (ch == 1) return pal[row[x]];
    uint32_t v;
    memcpy(&v, row + x * ch, 4);
    return v & 0xFFFFFFu;
}

ALWAYS_INLINE int scan_row(const uint8_t *gr, int gch, const uint32_t *gpal, const uint8_t *pr, int pch,
                           const uint32_t *ppal, Py_ssize_t w, Pairs *r) {
    for (Py_ssize_t x = 0; x < w; x++) {
        if (x && r->run) {   /* both rows repeat pixel x-1: extend the run 8 pixels at a time */
            while (x + 8 <= w && !memcmp(gr + x * gch, gr + (x - 1) * gch, 8 * gch)
                   && !memcmp(pr + x * pch, pr + (x - 1) * pch, 8 * pch)) {
                r->run += 8;
                x += 8;
            }
            if (x == w) break;
        }
        uint32_t g = pixel_id(gr, x, gch, gpal), p = pixel_id(pr, x, pch, ppal);
        if (r->run && g == r->last_g && p == r->last_p) {
            r->run++;
            continue;
        }
        if (r->run && push(r)) return -1;
        r->last_g = g;
        r->last_p = p;
        r->run = 1;
    }
    return 0;
}

#define SCAN(A, B) if (gch == A && pch == B) return scan_row(gr, A, gpal, pr, B, ppal, w, r);
static int scan(const uint8_t *gr, int gch, const uint32_t *gpal, const uint8_t *pr, int pch,
                const uint32_t *ppal, Py_ssize_t w, Pairs *r) {
    SCAN(3, 3) SCAN(4, 3) SCAN(3, 4) SCAN(4, 4) SCAN(1, 3) SCAN(3, 1) SCAN(1, 1) SCAN(1, 4) SCAN(4, 1)
    return -2;
}
#undef SCAN

/* Row buffers of one image: the current row, the row above, and a row of zeros (the first row's
 * "row above"), each with 8 bytes of slack for the 4-byte load at the end of a row. */
typedef struct { uint8_t *mem, *cur, *prev, *zero; } Rows;

static int rows_init(Rows *b, Py_ssize_t stride) {
    b->mem = calloc(3, (size_t)stride + 8);
    b->cur = b->mem;
    b->prev = b->mem + (stride + 8);
    b->zero = b->mem + 2 * (stride + 8);
    return b->mem ? 0 : -1;
}

/* Returns 0, -1 (out of memory), or 1 (a bad filter type or channel count). */
static int count_pairs(const uint8_t *graw, int gch, const uint32_t *gpal, const uint8_t *praw, int pch,
                     const uint32_t *ppal, Py_ssize_t w, Py_ssize_t h, Pairs *r) {
    Py_ssize_t gs = w * gch, ps = w * pch;
    Rows gb = {0}, pb = {0};
    int status = rows_init(&gb, gs) | rows_init(&pb, ps) ? -1 : 0;
    for (Py_ssize_t y = 0; y < h && !status; y++) {
        if (unfilter_row(graw + y * (gs + 1), y ? gb.prev : gb.zero, gb.cur, gs, gch)
            || unfilter_row(praw + y * (ps + 1), y ? pb.prev : pb.zero, pb.cur, ps, pch)) {
            status = 1;
            break;
        }
        int s = scan(gb.cur, gch, gpal, pb.cur, pch, ppal, w, r);
        status = s == -2 ? 1 : s;
        uint8_t *t = gb.cur; gb.cur = gb.prev; gb.prev = t;
        t = pb.cur; pb.cur = pb.prev; pb.prev = t;
    }
    if (!status && r->run && push(r)) status = -1;
    free(gb.mem);
    free(pb.mem);
    return status;
}

static const char RUNS_DOC[] =
    "pair_counts(gt_raw, gt_channels, gt_palette, pred_raw, pred_channels, pred_palette, width, height)\n"
    "-> (gt_ids, pred_ids, pixels) as bytes of uint32, uint32 and int64: each distinct (gt id, pred id)\n"
    "pair once, in order of first appearance in raster order, with its pixel count.\n\n"
    "*_raw: inflated scanlines (height rows of 1 filter byte + width * channels bytes).\n"
    "*_channels: 3 (RGB), 4 (RGBA, alpha ignored) or 1 (palette indices).\n"
    "*_palette: 256 uint32 ids (1024 bytes) for a palette image, else b\"\".\n"
    "Raises ValueError for a size mismatch, an unknown filter type or a bad channel count.";

static PyObject *pair_counts(PyObject *self, PyObject *args) {
    Py_buffer gb, pb, gpal, ppal;
    int gch, pch;
    Py_ssize_t w, h;
    if (!PyArg_ParseTuple(args, "y*iy*y*iy*nn", &gb, &gch, &gpal, &pb, &pch, &ppal, &w, &h)) return NULL;
    PyObject *result = NULL;
    Pairs r = {0};
    int ok_ch = (gch == 1 || gch == 3 || gch == 4) && (pch == 1 || pch == 3 || pch == 4);
    int ok = ok_ch && w > 0 && h > 0 && gb.len == h * (w * gch + 1) && pb.len == h * (w * pch + 1)
             && (gch != 1 || gpal.len == 1024) && (pch != 1 || ppal.len == 1024);
    int status = 1;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        status = count_pairs(gb.buf, gch, gpal.buf, pb.buf, pch, ppal.buf, w, h, &r);
        Py_END_ALLOW_THREADS
    }
    if (status < 0) PyErr_NoMemory();
    else if (status > 0) PyErr_SetString(PyExc_ValueError, "scanlines do not match the image size, or a row "
                                                            "has an unknown filter type");
    else result = Py_BuildValue("y#y#y#", (char *)r.g, r.len * 4, (char *)r.p, r.len * 4, (char *)r.n, r.len * 8);
    free(r.g);
    free(r.p);
    free(r.n);
    free(r.slots);
    PyBuffer_Release(&gb);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&gpal);
    PyBuffer_Release(&ppal);
    return result;
}

static PyMethodDef METHODS[] = {{"pair_counts", pair_counts, METH_VARARGS, RUNS_DOC}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_pngruns", "PNG scanlines to (gt id, pred id) pixel counts.", -1,
                                    METHODS};
PyMODINIT_FUNC PyInit__pngruns(void) { return PyModule_Create(&MODULE); }
