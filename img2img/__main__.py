from img2img.launch import main

main()
