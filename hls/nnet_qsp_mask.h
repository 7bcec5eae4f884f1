// qsp: elementwise constant 0/1 activation mask, and a plain re-quantization (cast).
//
// Both layers compute res[i] = res_T(data[i]) (masked elements: 0). The cast to res_T
// applies res_T's rounding and AP_SAT modes, which qsp sets from the trained quantizer, so
// the result is bit-exact with qsp's fixed-point semantics (qsp/fixedpoint.py).
// Layout: flat channels-last (H, W, C) order, the layout hls4ml uses after its
// channels-last conversion. Array overloads serve io_parallel; hls::stream overloads serve
// io_stream (one stream word = one pixel's channels; right after a Flatten the word sizes
// differ, see the io_stream section).
#ifndef NNET_QSP_MASK_H_
#define NNET_QSP_MASK_H_

#include "hls_stream.h"
#include "nnet_common.h"

namespace nnet {

struct qsp_mask_config {
    static const unsigned n_in = 1;
    typedef ap_uint<1> mask_t;
};

struct qsp_requant_config {
    static const unsigned n_in = 1;
};

// ---------------------------------------------------------------- io_parallel
template <class data_T, class res_T, typename CONFIG_T>
void qsp_mask(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in],
              const typename CONFIG_T::mask_t mask[CONFIG_T::n_in]) {
    #pragma HLS INLINE
MaskLoop:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
        #pragma HLS UNROLL
        if (mask[i] != 0) {
            res[i] = (res_T)data[i];
        } else {
            res[i] = 0;
        }
    }
}

template <class data_T, class res_T, typename CONFIG_T>
void qsp_requant(data_T data[CONFIG_T::n_in], res_T res[CONFIG_T::n_in]) {
    #pragma HLS INLINE
RequantLoop:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
        #pragma HLS UNROLL
        res[i] = (res_T)data[i];
    }
}

// ---------------------------------------------------------------- io_stream
// Usually one stream word = one pixel's channels on both sides. After a Flatten, hls4ml
// leaves the input stream as it was (InplaceStreamFlatten: e.g. 1 value a word after the
// channels-last transpose) while this layer's output is packed by its own (flat) shape, so
// the input and output word sizes may differ: the general path walks the elements (as in
// nnet_qsp_elementwise.h); element i of the flat order is mask[i] in both paths.
template <class data_T, class res_T, typename CONFIG_T>
void qsp_mask(hls::stream<data_T> &data, hls::stream<res_T> &res,
              const typename CONFIG_T::mask_t mask[CONFIG_T::n_in]) {
    if (data_T::size == res_T::size) {
    MaskPixels:
        for (unsigned p = 0; p < CONFIG_T::n_in / data_T::size; p++) {
            #pragma HLS PIPELINE
            data_T in = data.read();
            res_T out;
            PRAGMA_DATA_PACK(out)
        MaskChannels:
            for (unsigned j = 0; j < data_T::size; j++) {
                #pragma HLS UNROLL
                if (mask[p * data_T::size + j] != 0) {
                    out[j] = (typename res_T::value_type)in[j];
                } else {
                    out[j] = 0;
                }
            }
            res.write(out);
        }
    } else {
        data_T in;
        res_T out;
    MaskElements:
        for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
            #pragma HLS PIPELINE
            if (i % data_T::size == 0)
                in = data.read();
            if (mask[i] != 0) {
                out[i % res_T::size] = (typename res_T::value_type)in[i % data_T::size];
            } else {
                out[i % res_T::size] = 0;
            }
            if (i % res_T::size == res_T::size - 1)
                res.write(out);
        }
    }
}

template <class data_T, class res_T, typename CONFIG_T>
void qsp_requant(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    if (data_T::size == res_T::size) {
    RequantPixels:
        for (unsigned p = 0; p < CONFIG_T::n_in / data_T::size; p++) {
            #pragma HLS PIPELINE
            data_T in = data.read();
            res_T out;
            PRAGMA_DATA_PACK(out)
        RequantChannels:
            for (unsigned j = 0; j < data_T::size; j++) {
                #pragma HLS UNROLL
                out[j] = (typename res_T::value_type)in[j];
            }
            res.write(out);
        }
    } else {
        data_T in;
        res_T out;
    RequantElements:
        for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
            #pragma HLS PIPELINE
            if (i % data_T::size == 0)
                in = data.read();
            out[i % res_T::size] = (typename res_T::value_type)in[i % data_T::size];
            if (i % res_T::size == res_T::size - 1)
                res.write(out);
        }
    }
}

} // namespace nnet

#endif
