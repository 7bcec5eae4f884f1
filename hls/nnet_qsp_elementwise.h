// qsp: per-channel scale-and-shift (a BatchNorm with no weight layer before it) and clip.
//
// qsp_scale_shift: res[i] = res_T(data[i] * scale[c] + bias[c]), c the channel of element i.
//   The product and the sum are ap_fixed expressions, which are exact (full width), so the
//   only rounding is the one cast to res_T (its rounding mode and AP_SAT, set by qsp).
// qsp_clip: res[i] = res_T(min(max(data[i], lo), hi)); lo/hi are held in bound_t, a type
//   that holds them exactly, and compared with data[i] exactly (ap_fixed comparisons of
//   different types are exact).
// Layout: flat channels-last (..., C), the layout after hls4ml's channels-last conversion:
// the channel is the innermost index. io_stream: one stream word = one pixel's channels.
#ifndef NNET_QSP_ELEMENTWISE_H_
#define NNET_QSP_ELEMENTWISE_H_

#include "hls_stream.h"
#include "nnet_common.h"

namespace nnet {

struct qsp_scale_shift_config {
    static const unsigned n_in = 1;
    static const unsigned n_chan = 1;
    typedef ap_fixed<16, 6> scale_t;
    typedef ap_fixed<16, 6> bias_t;
};

struct qsp_clip_config {
    static const unsigned n_in = 1;
    static const bool has_lo = true;
    static const bool has_hi = true;
    typedef ap_fixed<2, 2> bound_t;
    static bound_t lo() { return bound_t(0); }
    static bound_t hi() { return bound_t(1); }
};

template <class data_T, class res_T, typename CONFIG_T> res_T qsp_clip_one(data_T x) {
    #pragma HLS INLINE
    const typename CONFIG_T::bound_t lo = CONFIG_T::lo();
    const typename CONFIG_T::bound_t hi = CONFIG_T::hi();
    if (CONFIG_T::has_lo && x < lo)
        return (res_T)lo;
    if (CONFIG_T::has_hi && x > hi)
        return (res_T)hi;
    return (res_T)x;
}

// ---------------------------------------------------------------- io_parallel
template <class data_T, class res_T, typename CONFIG_T>
void qsp_scale_shift(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in],
                     const typename CONFIG_T::scale_t scale[CONFIG_T::n_chan],
                     const typename CONFIG_T::bias_t bias[CONFIG_T::n_chan]) {
    #pragma HLS INLINE
ScaleShiftLoop:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
        #pragma HLS UNROLL
        const unsigned c = i % CONFIG_T::n_chan;
        res[i] = (res_T)(data[i] * scale[c] + bias[c]);
    }
}

template <class data_T, class res_T, typename CONFIG_T>
void qsp_clip(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in]) {
    #pragma HLS INLINE
ClipLoop:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
        #pragma HLS UNROLL
        res[i] = qsp_clip_one<data_T, res_T, CONFIG_T>(data[i]);
    }
}

// ---------------------------------------------------------------- io_stream
// Usually one stream word = one pixel's channels on both sides. After a Flatten, hls4ml
// leaves the input stream as it was (InplaceStreamFlatten: e.g. 1 value a word after the
// channels-last transpose) while this layer's output is packed by its own (flat) shape, so
// the input and output word sizes may differ: the general path walks the elements.
template <class data_T, class res_T, typename CONFIG_T>
void qsp_scale_shift(hls::stream<data_T> &data, hls::stream<res_T> &res,
                     const typename CONFIG_T::scale_t scale[CONFIG_T::n_chan],
                     const typename CONFIG_T::bias_t bias[CONFIG_T::n_chan]) {
    if (data_T::size == res_T::size) {
    ScaleShiftPixels:
        for (unsigned p = 0; p < CONFIG_T::n_in / data_T::size; p++) {
            #pragma HLS PIPELINE
            data_T in = data.read();
            res_T out;
            PRAGMA_DATA_PACK(out)
        ScaleShiftChannels:
            for (unsigned j = 0; j < data_T::size; j++) {
                #pragma HLS UNROLL
                const unsigned c = (p * data_T::size + j) % CONFIG_T::n_chan;
                out[j] = (typename res_T::value_type)(in[j] * scale[c] + bias[c]);
            }
            res.write(out);
        }
    } else {
        data_T in;
        res_T out;
    ScaleShiftElements:
        for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
            #pragma HLS PIPELINE
            if (i % data_T::size == 0)
                in = data.read();
            const unsigned c = i % CONFIG_T::n_chan;
            out[i % res_T::size] = (typename res_T::value_type)(in[i % data_T::size] * scale[c] + bias[c]);
            if (i % res_T::size == res_T::size - 1)
                res.write(out);
        }
    }
}

template <class data_T, class res_T, typename CONFIG_T>
void qsp_clip(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    typedef typename data_T::value_type in_t;
    typedef typename res_T::value_type out_t;
    if (data_T::size == res_T::size) {
    ClipPixels:
        for (unsigned p = 0; p < CONFIG_T::n_in / data_T::size; p++) {
            #pragma HLS PIPELINE
            data_T in = data.read();
            res_T out;
            PRAGMA_DATA_PACK(out)
        ClipChannels:
            for (unsigned j = 0; j < data_T::size; j++) {
                #pragma HLS UNROLL
                out[j] = qsp_clip_one<in_t, out_t, CONFIG_T>(in[j]);
            }
            res.write(out);
        }
    } else {
        data_T in;
        res_T out;
    ClipElements:
        for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
            #pragma HLS PIPELINE
            if (i % data_T::size == 0)
                in = data.read();
            out[i % res_T::size] = qsp_clip_one<in_t, out_t, CONFIG_T>(in[i % data_T::size]);
            if (i % res_T::size == res_T::size - 1)
                res.write(out);
        }
    }
}

} // namespace nnet

#endif
